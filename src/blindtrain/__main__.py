from .cli import main

if __name__ == "__main__":  # guarded: spawned worker processes re-import __main__
    main()
