"""The ingest stage: snapshot a time window of a source into a versioned dataset."""
