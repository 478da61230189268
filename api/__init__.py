"""logship's API: serves archived and live logs over HTTP, WebSocket, SSE and SQL."""
