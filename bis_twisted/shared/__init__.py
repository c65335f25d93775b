"""What both processes use: HTTP plumbing (answers, limits, draining, admin checks),
endpoint-file schemas, and start-up tuning. Nothing here imports the gateway or the model
server."""
