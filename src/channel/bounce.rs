//! Aligned bounce buffers and the block locks for read-modify-write.
