"""The store: one CommitLog, a ConsumeQueue per (topic, queue), the key index, checkpoint and recovery."""
