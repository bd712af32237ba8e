"""The ground floor: the error users see, where and how tensors compute, and artifact I/O."""
