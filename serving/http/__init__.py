"""The HTTP/1.1 transport: an asyncio.Protocol on httptools. The routes it serves are the protocols'
(serving/protocols/router.py)."""
