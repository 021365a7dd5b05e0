"""The engine: scheduling, job processes, logs and events. No HTTP in here."""
