//! With the `tch` feature, lets the `osteo` binary and tests find libtorch at run time: an rpath
//! to the directory torch-sys linked against (published by torch-sys as DEP_TCH_LIBTORCH_LIB;
//! absent without the feature).

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
