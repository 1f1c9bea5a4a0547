"""taskservice: a durable HTTP task queue that runs at most two tasks at once."""
