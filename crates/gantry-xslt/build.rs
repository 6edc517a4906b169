//! Compiles the C shim against the system's libxslt and libxml2, found with pkg-config
//! (Debian: `apt-get install libxslt1-dev pkg-config`).

fn main() {
    println!("cargo:rerun-if-changed=src/shim.c");
    let libxslt = match pkg_config::Config::new().atleast_version("1.1.28").cargo_metadata(false).probe("libxslt") {
        Ok(library) => library,
        Err(err) => {
            println!(
                "cargo:warning=libxslt was not found ({err}); install it (Debian: apt-get install libxslt1-dev pkg-config) or build Gantry without the `xslt` feature"
            );
            std::process::exit(1);
        }
    };
    let mut build = cc::Build::new();
    build.file("src/shim.c").warnings(true);
    for include in &libxslt.include_paths {
        build.include(include);
    }
    build.compile("gantry_xslt_shim");
    // After the shim, so a linker that drops unused libraries sees the shim's needs first.
    for path in &libxslt.link_paths {
        println!("cargo:rustc-link-search=native={}", path.display());
    }
    for lib in &libxslt.libs {
        println!("cargo:rustc-link-lib={lib}");
    }
}
