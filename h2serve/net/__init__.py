"""The network side: listening sockets, TLS, development certificates, and the one asyncio adapter."""
