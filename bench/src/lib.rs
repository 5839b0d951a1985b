//! Shared helpers of the mappedram demo and benchmark binaries.
