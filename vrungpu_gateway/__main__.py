"""`python -m vrungpu_gateway` starts the gateway."""

from vrungpu_gateway.cli import main

if __name__ == "__main__":
    main()
