"""The HTTP front end: an asyncio.Protocol on httptools (this package) and the routes it serves."""
