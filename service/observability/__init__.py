"""What every request leaves behind: request id, timing, JSON log line, Prometheus metrics."""
