"""An atomic counter for compiled code: threads claim chunks of a region one at a time without the GIL."""

from numba import types
from numba.extending import intrinsic


@intrinsic
def _fetch_add(typingctx, counter):
    """counter[0] += 1 as one atomic step (LLVM atomicrmw, sequentially consistent); returns the value before."""
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64):
        return None

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        one = context.get_constant(types.int64, 1)
        return builder.atomic_rmw("add", ary.data, one, "seq_cst")

    return types.int64(counter), codegen
