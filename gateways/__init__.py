"""The front doors (each owns its sockets, speaks ``Broker``), the server that runs them, and the CLI."""
