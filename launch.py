"""Start ML Studio: `python launch.py --help` lists the flags."""

from studio.app import main

if __name__ == "__main__":
    main()
