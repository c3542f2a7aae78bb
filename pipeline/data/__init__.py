"""The MVTec AD data layer: what a category looks like, how to validate it, and how to get one."""
