//! Engine: parallel save/restore of whole ramblocks from/to host memory.
