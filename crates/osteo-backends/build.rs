//! With the `tch` feature, lets this crate's tests find libtorch at run time: an rpath to the
//! directory torch-sys linked against (published by torch-sys as DEP_TCH_LIBTORCH_LIB).

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
