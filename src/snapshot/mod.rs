//! Live copy-on-write snapshots (write-protect userfaultfd).
