"""Collection: transports (SSH/local), one adapter per scheduler, and the fan-out runner."""
