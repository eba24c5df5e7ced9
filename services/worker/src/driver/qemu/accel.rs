//! Choosing the accelerator: KVM where a hardware KVM module is loaded and
//! `/dev/kvm` is usable, TCG (software emulation) otherwise. The reason is
//! logged and shown in `GET /v1/hosts`.

use std::path::Path;

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelChoice {
    Auto,
    Kvm,
    Tcg,
}

/// The accelerator QEMU will use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// `-accel` value.
    pub fn qemu_name(self) -> &'static str {
        match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg,thread=multi",
        }
    }

    /// `-cpu` model: the host's with KVM, everything TCG can emulate otherwise.
    pub fn cpu_model(self) -> &'static str {
        match self {
            Self::Kvm => "host",
            Self::Tcg => "max",
        }
    }
}

/// Decide, with a human-readable reason. `sys` is `/sys/module` (a parameter for tests).
pub fn choose(choice: AccelChoice, sys_module: &Path, dev_kvm: &Path) -> (Accel, String) {
    let hardware = ["kvm_intel", "kvm_amd"].into_iter().find(|m| sys_module.join(m).exists());
    let usable = std::fs::OpenOptions::new().read(true).write(true).open(dev_kvm).is_ok();
    match choice {
        AccelChoice::Kvm => (Accel::Kvm, "kvm forced by --accel kvm".into()),
        AccelChoice::Tcg => (Accel::Tcg, "tcg forced by --accel tcg".into()),
        AccelChoice::Auto => match (hardware, usable) {
            (Some(m), true) => (Accel::Kvm, format!("kvm: hardware module {m} loaded and {} usable", dev_kvm.display())),
            (Some(m), false) => (Accel::Tcg, format!("tcg: {m} loaded but {} is not usable", dev_kvm.display())),
            (None, _) if sys_module.join("kvm_pvm").exists() => {
                (Accel::Tcg, "tcg: this host's KVM is kvm_pvm (paravirtualized nested KVM), which cannot boot stock kernels".into())
            }
            (None, _) => (Accel::Tcg, "tcg: no hardware KVM module (kvm_intel/kvm_amd) loaded".into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sys(modules: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for m in modules {
            std::fs::create_dir_all(d.path().join(m)).unwrap();
        }
        d
    }

    #[test]
    fn auto_prefers_hardware_kvm_when_usable() {
        let s = sys(&["kvm", "kvm_intel"]);
        let dev = s.path().join("kvm-dev");
        std::fs::write(&dev, b"").unwrap();
        assert_eq!(choose(AccelChoice::Auto, s.path(), &dev).0, Accel::Kvm);
        assert_eq!(choose(AccelChoice::Auto, s.path(), &s.path().join("missing")).0, Accel::Tcg);
    }

    #[test]
    fn auto_refuses_pvm_with_a_reason() {
        let s = sys(&["kvm", "kvm_pvm"]);
        let dev = s.path().join("kvm-dev");
        std::fs::write(&dev, b"").unwrap();
        let (accel, why) = choose(AccelChoice::Auto, s.path(), &dev);
        assert_eq!(accel, Accel::Tcg);
        assert!(why.contains("kvm_pvm"), "{why}");
    }

    #[test]
    fn explicit_choice_wins() {
        let s = sys(&[]);
        assert_eq!(choose(AccelChoice::Kvm, s.path(), &s.path().join("x")).0, Accel::Kvm);
        assert_eq!(choose(AccelChoice::Tcg, s.path(), &s.path().join("x")).0, Accel::Tcg);
    }
}
