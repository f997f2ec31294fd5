"""``python -m ferrymq.gateways`` runs the CLI (the tests start brokers this way)."""

from .cli import main

main()
