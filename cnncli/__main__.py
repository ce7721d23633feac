from cnncli.commands.cli import main

# Guarded: worker processes started with "spawn" import this module again and must not run the CLI.
if __name__ == "__main__":
    main()
