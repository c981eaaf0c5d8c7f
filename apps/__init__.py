"""edgekit.apps: demo applications that run through the edgekit facade under a latency budget."""
