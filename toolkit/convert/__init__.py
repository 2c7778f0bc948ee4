"""The `convert` stage: an MSD task (folder or archive) or nnU-Net v2 raw dataset into raw/."""
