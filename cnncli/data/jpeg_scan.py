"""A sound lower bound on how much entropy-coded data a Huffman JPEG needs, to catch files cut short.

libjpeg (behind Pillow) decodes a JPEG whose scan data stops early at an EOI marker without an error: it fills
the missing blocks and only emits a warning that Pillow does not expose. So a file cut short and given a new EOI,
or a header claiming 20000x4000 over a few bytes of data, decodes as an image. This module reads the markers
(no pixel decoding) and refuses a file whose data is provably too short:

* every block of a sequential Huffman scan (SOF0/SOF1) codes a DC difference and at least one AC code (the EOB
  code or a coefficient code), each Huffman code at least as long as the shortest code of its table; a progressive
  (SOF2) DC first scan needs the shortest DC code per block, a DC refinement scan exactly one bit per block.
  A scan whose bits (after removing byte stuffing and restart markers) fall below that is truncated;
* a scan with a restart interval must hold one RST marker between consecutive intervals;
* every frame component must appear in a scan (sequential) or in a DC first scan (progressive).

Not detected (no sound bound exists without decoding): a cut that leaves at least the minimum bits per block
(typically a photo losing less than ~95% of its data), and any cut inside a progressive AC scan, where one
end-of-band run may cover thousands of blocks. Arithmetic-coded, lossless and hierarchical JPEGs are not checked.
"""

from __future__ import annotations

import math
import re
import struct

_SEQUENTIAL = (0xC0, 0xC1)
_PROGRESSIVE = 0xC2
_UNCHECKED_SOF = frozenset({0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_END_OF_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # a marker that ends entropy-coded data
_RST = re.compile(rb"\xff[\xd0-\xd7]")


def _min_code_lengths(segment: bytes, tables: dict[tuple[int, int], int]) -> None:
    """Record, from one DHT segment, the shortest code length of each (class, id) table."""
    pos = 0
    while pos + 17 <= len(segment):
        tc_th = segment[pos]
        counts = segment[pos + 1 : pos + 17]
        shortest = next((i + 1 for i, n in enumerate(counts) if n), 16)
        tables[(tc_th >> 4, tc_th & 0x0F)] = shortest
        pos += 17 + sum(counts)


def _component_blocks(width: int, height: int, comps: dict[int, tuple[int, int]], cid: int) -> int:
    """Blocks of one component without MCU padding (a lower bound on what the scan codes)."""
    hmax = max(h for h, _ in comps.values())
    vmax = max(v for _, v in comps.values())
    h, v = comps[cid]
    return math.ceil(math.ceil(width * h / hmax) / 8) * math.ceil(math.ceil(height * v / vmax) / 8)


def shortfall(data: bytes) -> str | None:
    """None when the JPEG bytes hold enough entropy-coded data for the frame they declare, else a short reason.

    `data` is the whole file. Anything this parser does not understand returns None (Pillow judges those).
    """
    if data[:2] != b"\xff\xd8":
        return None
    pos, sof, width, height, restart = 2, None, 0, 0, 0
    comps: dict[int, tuple[int, int]] = {}
    tables: dict[tuple[int, int], int] = {}
    scanned: set[int] = set()
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:
            break
        (length,) = struct.unpack_from(">H", data, pos + 2)
        segment = data[pos + 4 : pos + 2 + length]
        if length < 2 or len(segment) != length - 2:
            return None
        pos += 2 + length
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if marker in _UNCHECKED_SOF or len(segment) < 6:
                return None
            sof = marker
            height, width = struct.unpack_from(">HH", segment, 1)
            for i in range(segment[5]):
                cid, hv = segment[6 + 3 * i], segment[7 + 3 * i]
                comps[cid] = (max(hv >> 4, 1), max(hv & 0x0F, 1))
        elif marker == 0xC4:
            _min_code_lengths(segment, tables)
        elif marker == 0xDD and len(segment) >= 2:
            (restart,) = struct.unpack_from(">H", segment, 0)
        elif marker == 0xDA:
            if sof is None or not comps or width == 0 or height == 0:
                return None
            found = _END_OF_SCAN.search(data, pos)
            end = found.start() if found else len(data)
            reason = _check_scan(data, pos, end, segment, sof, width, height, comps, tables, restart, scanned)
            if reason:
                return reason
            pos = end
    if sof is None or not comps:
        return None
    if not set(comps) <= scanned:
        return f"JPEG ends before every component's scan ({width}x{height} declared)"
    return None


def _check_scan(data, pos, end, segment, sof, width, height, comps, tables, restart, scanned) -> str | None:
    """Check one scan whose entropy-coded data is data[pos:end]; adds the components it covers."""
    n = segment[0] if segment else 0
    if n == 0 or len(segment) < 1 + 2 * n + 3:
        return None
    ids = [segment[1 + 2 * i] for i in range(n)]
    selectors = [segment[2 + 2 * i] for i in range(n)]
    ss, ah = segment[1 + 2 * n], segment[3 + 2 * n] >> 4
    if any(cid not in comps for cid in ids):
        return None
    # Every 0xFF byte in a scan is a stuffed FF 00 pair (one byte not data), an RST marker (two bytes) or a
    # fill byte (one byte): counting 0xFF is far faster than counting FF 00 pairs. RST markers are only counted
    # when a restart interval is set (without one, counting them as data only loosens the bound).
    rst = sum(1 for _ in _RST.finditer(data, pos, end)) if restart else 0
    bits = 8 * (end - pos - data.count(b"\xff", pos, end) - rst)
    need = 0
    for cid, sel in zip(ids, selectors):
        blocks = _component_blocks(width, height, comps, cid)
        if sof in _SEQUENTIAL:
            per_block = tables.get((0, sel >> 4), 1) + tables.get((1, sel & 0x0F), 1)
            scanned.add(cid)
        elif ss == 0:  # progressive DC scan: first pass codes a DC difference, refinement one bit
            per_block = 1 if ah else tables.get((0, sel >> 4), 1)
            scanned.add(cid)
        else:
            per_block = 0  # progressive AC scan: an end-of-band run can cover many blocks
        need += blocks * per_block
    if bits < need:
        return f"JPEG scan data too short for the declared {width}x{height} ({bits} bits, at least {need} needed)"
    if restart and (sof in _SEQUENTIAL or ss == 0):
        mcus = _scan_mcus(width, height, comps, ids)
        expected = math.ceil(mcus / restart) - 1
        if rst < expected:
            return f"JPEG scan data too short for the declared {width}x{height} ({rst} of {expected} restart markers)"
    return None


def _scan_mcus(width: int, height: int, comps: dict[int, tuple[int, int]], ids: list[int]) -> int:
    """MCUs in a scan: one block per MCU for a single-component scan, else the interleaved MCU grid."""
    if len(ids) == 1:
        return _component_blocks(width, height, comps, ids[0])
    hmax = max(h for h, _ in comps.values())
    vmax = max(v for _, v in comps.values())
    return math.ceil(width / (8 * hmax)) * math.ceil(height / (8 * vmax))
