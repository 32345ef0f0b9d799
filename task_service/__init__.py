"""aitask.v1.TaskService: validates requests, stores tasks in MongoDB, enqueues their jobs."""
