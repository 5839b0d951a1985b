//! Give the shared library a SONAME: a plain cargo cdylib has none, and a C
//! program linked against it would then record a path instead of a name.
fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "0".into());
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libmappedram.so.{major}");
    println!("cargo:rerun-if-changed=build.rs");
}
