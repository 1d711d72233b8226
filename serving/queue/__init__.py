"""The asynchronous service: the cloud queue service's queues (an input queue and its sink per service), their
HTTP and WebSocket API, their stores (SQLite, Redis), and the subscriber that runs each input item through the
request pipeline and answers to the sink (README, "Asynchronous services")."""
