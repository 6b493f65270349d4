"""Infrastructure: joining Ray, and local or object-store paths as pyarrow filesystems."""
