"""The FerryMQ Python client: speaks RocketMQ remoting via ``protocols.remoting``; never imports the core."""
