"""The front doors: each owns its sockets and translates its protocol into ``Broker`` calls; plus the server and the CLI."""
