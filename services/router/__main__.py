"""`python -m services.router --config FILE`: run the router until SIGTERM/SIGINT."""

from services.router.server import cli

if __name__ == "__main__":
    cli()
