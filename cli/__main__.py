"""`python -m cli` runs the same command as the `loopline` entry point."""
from cli.app import main

if __name__ == "__main__":
    main()
