//! Disk images and block I/O for Vireo's virtio-blk.
