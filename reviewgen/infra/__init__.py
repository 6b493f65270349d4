"""Infrastructure: joining Ray, storage paths as pyarrow filesystems, the console, progress relay and tracking."""
