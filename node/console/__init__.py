"""The web console, `/metrics` and `/healthz`: an aiohttp server on the node's own event loop."""
