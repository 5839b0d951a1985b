//! The C ABI: pointer validation, panic boundary, handle ownership, error
//! mapping. No logic lives here.
