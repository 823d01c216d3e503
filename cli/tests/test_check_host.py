"""Host tests of scripts/check-host.sh (what `make install` checks first): a kernel build tree
made in a temporary directory, complete or with one thing taken away, and fake tools on PATH
(clang, ld.lld, rustc, bindgen of made-up versions, so that the host's own never match by
chance). Each case checks the exit status and the exact set of problems reported. When the
project's cached 6.12 release kernel is there, the same is done on a tree of links to its
real files."""

import glob
import os
import re
import shutil
import subprocess
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHECK = os.path.join(ROOT, "scripts", "check-host.sh")
CACHE = os.environ.get("SPANTRACK_CACHE") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "spantrack")

RUSTC_TEXT = "rustc 9.99.0 (0123456789 2099-01-01)"
CLANG_TEXT = "Fake clang version 77.1.0"
BINDGEN_TEXT = "bindgen 0.99.0"
META = ["rust/libkernel.rmeta", "rust/libcore.rmeta", "rust/libcompiler_builtins.rmeta",
        "rust/libmacros.so", "include/generated/rustc_cfg", "scripts/target.json"]
CONFIG = {
    "MODULES": "y", "RUST": "y", "X86_64": "y", "FTRACE_SYSCALLS": "y", "RELAY": "y",
    "DEBUG_FS": "y", "TRACEPOINTS": "y", "KALLSYMS": "y", "CC_IS_CLANG": "y",
    "CLANG_VERSION": "770100", "CC_VERSION_TEXT": '"%s"' % CLANG_TEXT,
    "RUSTC_VERSION_TEXT": '"%s"' % RUSTC_TEXT, "BINDGEN_VERSION_TEXT": '"%s"' % BINDGEN_TEXT,
}


def write(path, text, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def tool(bindir, name, script):
    write(os.path.join(bindir, name), "#!/bin/sh\n" + script, 0o755)


class CheckHost(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="check-host-")
        self.addCleanup(shutil.rmtree, self.tmp)
        self.kdir = os.path.join(self.tmp, "build")
        self.bin = os.path.join(self.tmp, "bin")
        self.config = dict(CONFIG)
        write(os.path.join(self.kdir, "Makefile"), "# a kernel Makefile\n")
        write(os.path.join(self.kdir, "include/config/kernel.release"), "6.12.0-test\n")
        for m in META:
            write(os.path.join(self.kdir, m), "")
        self.write_config()
        tool(self.bin, "clang-77",
             'case "$1" in -dumpversion) echo 77.1.0;; --version) echo "%s";; esac\n' % CLANG_TEXT)
        tool(self.bin, "ld.lld-77", "exit 0\n")
        # --version, else a check of the metadata that fails while the file "unusable" exists.
        self.unusable = os.path.join(self.tmp, "unusable")
        tool(self.bin, "rustc", 'if [ "$1" = --version ]; then echo "%s"; exit 0; fi\n'
             'if [ -e %s ]; then echo "error[E0463]: can\'t find crate for \\`uapi\\` which'
             ' \\`kernel\\` depends on"; exit 1; fi\n' % (RUSTC_TEXT, self.unusable))
        tool(self.bin, "bindgen", 'echo "%s"\n' % BINDGEN_TEXT)

    def write_config(self):
        lines = []
        for k, v in self.config.items():
            lines.append("# CONFIG_%s is not set" % k if v is None else "CONFIG_%s=%s" % (k, v))
        write(os.path.join(self.kdir, ".config"), "\n".join(lines) + "\n")

    def run_check(self, *extra, path=None, kdir=None):
        env = {k: v for k, v in os.environ.items() if k not in ("RUSTC", "KDIR", "BINDGEN")}
        # No rustup toolchains of the host's: only the fake rustc and /usr/bin's can match.
        env["HOME"] = self.tmp
        env["RUSTUP_HOME"] = os.path.join(self.tmp, "no-rustup")
        env["PATH"] = path or (self.bin + ":/usr/bin:/bin")
        p = subprocess.run(["bash", CHECK, "--kdir", kdir or self.kdir, "--make-flags", *extra],
                           capture_output=True, text=True, env=env, timeout=60)
        keys = re.findall(r"^  MISSING  \[([a-z-]+)\]", p.stderr, re.M)
        return p.returncode, p.stdout.strip(), p.stderr, set(keys)

    def assertProblems(self, want, *extra, **kw):
        rc, out, err, keys = self.run_check(*extra, **kw)
        self.assertEqual(keys, set(want), err)
        self.assertEqual(rc, 1 if want else 0, err)
        if want:
            self.assertEqual(out, "", "no make flags when something is missing")
            self.assertIn("result: %d problem(s): " % len(want), err)
        return out, err

    def test_complete_tree(self):
        out, err = self.assertProblems([])
        self.assertEqual(out, "LLVM=-77 RUSTC=%s/rustc" % self.bin)
        self.assertIn("result: nothing missing", err)

    def test_no_build_tree(self):
        os.remove(os.path.join(self.kdir, ".config"))
        _, err = self.assertProblems(["no-build-tree"])
        self.assertIn("linux-headers", err)

    def test_no_config_rust(self):
        self.config["RUST"] = None
        self.write_config()
        _, err = self.assertProblems(["no-config-rust"])
        # No Rust metadata or rustc checks: without CONFIG_RUST they cannot help.
        self.assertNotIn("Rust metadata", err)
        self.assertNotIn("ok       rustc", err)

    def test_kernel_option_off(self):
        self.config["RELAY"] = None
        self.write_config()
        _, err = self.assertProblems(["kernel-options"])
        self.assertRegex(err, r"\[kernel-options\] CONFIG_RELAY off")

    def test_each_metadata_file_is_required(self):
        for m in META:
            with self.subTest(missing=m):
                p = os.path.join(self.kdir, m)
                os.rename(p, p + ".away")
                try:
                    _, err = self.assertProblems(["no-rust-metadata"])
                    line = [l for l in err.splitlines() if "[no-rust-metadata]" in l][0]
                    self.assertIn(m, line)
                    self.assertEqual([x for x in META if x in line], [m])
                finally:
                    os.rename(p + ".away", p)

    def test_metadata_rustc_cannot_use(self):
        write(self.unusable, "")
        _, err = self.assertProblems(["rust-metadata-unusable"])
        self.assertIn("can't find crate for `uapi` which `kernel` depends on", err)

    def test_no_metadata_and_no_bindgen(self):
        shutil.rmtree(os.path.join(self.kdir, "rust"))
        os.remove(os.path.join(self.bin, "bindgen"))
        _, err = self.assertProblems(["no-rust-metadata", "no-bindgen"])
        self.assertIn("modules_prepare", err)
        self.assertIn("bindgen-cli --version 0.99.0", err)

    def test_bindgen_not_needed_with_metadata(self):
        os.remove(os.path.join(self.bin, "bindgen"))
        self.assertProblems([])

    def test_rustc_of_another_version(self):
        tool(self.bin, "rustc", 'echo "rustc 9.98.0 (fedcba9876 2098-01-01)"\n')
        _, err = self.assertProblems(["rustc-version"])
        self.assertIn("it was built with '%s'" % RUSTC_TEXT, err)
        self.assertIn("%s/rustc: rustc 9.98.0" % self.bin, err)

    def test_rustc_given_that_does_not_exist(self):
        self.assertProblems(["no-rustc"], "--rustc", os.path.join(self.tmp, "nothing/rustc"))

    def test_rustc_found_off_path(self):
        # The matching rustc is not first on PATH: the check finds it among the candidates.
        other = os.path.join(self.tmp, "other")
        tool(other, "rustc", 'echo "rustc 1.0.0"\n')
        out, _ = self.assertProblems([], path=other + ":" + self.bin + ":/usr/bin:/bin")
        self.assertEqual(out, "LLVM=-77 RUSTC=%s/rustc" % self.bin)

    def test_without_dev_fd(self):
        # A system without /dev/fd (the test VM's bare devtmpfs, seen in issue 15's walkthrough;
        # some containers): the rustc on PATH must still be found. Run under a private mount
        # namespace with an empty tmpfs as /dev.
        probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs tmpfs /dev"],
                               capture_output=True)
        if probe.returncode != 0:
            self.skipTest("cannot make a mount namespace here (unshare -m needs root)")
        env = {k: v for k, v in os.environ.items() if k not in ("RUSTC", "KDIR", "BINDGEN")}
        env.update(HOME=self.tmp, RUSTUP_HOME=os.path.join(self.tmp, "no-rustup"),
                   PATH=self.bin + ":/usr/bin:/bin")
        p = subprocess.run(["unshare", "-m", "sh", "-c",
                            'mount -t tmpfs tmpfs /dev && exec bash "$@"', "sh",
                            CHECK, "--kdir", self.kdir, "--make-flags"],
                           capture_output=True, text=True, env=env, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout.strip(), "LLVM=-77 RUSTC=%s/rustc" % self.bin)
        self.assertNotIn("/dev/fd", p.stderr)

    def test_no_clang_of_the_kernels_version(self):
        os.remove(os.path.join(self.bin, "clang-77"))
        _, err = self.assertProblems(["no-clang"])
        self.assertIn("clang 77", err)

    def test_clang_without_lld(self):
        os.remove(os.path.join(self.bin, "ld.lld-77"))
        self.assertProblems(["no-lld"])

    def test_gcc_kernel(self):
        for k in ("CC_IS_CLANG", "CLANG_VERSION"):
            del self.config[k]
        self.config.update(CC_IS_GCC="y", GCC_VERSION="990100", CC_VERSION_TEXT='"gcc-99 (Fake) 99.1.0"')
        self.write_config()
        _, err = self.assertProblems(["no-gcc"])
        self.assertIn("gcc 99", err)
        tool(self.bin, "gcc-99", 'case "$1" in -dumpversion) echo 99.1.0;; esac\n')
        out, _ = self.assertProblems([])
        self.assertEqual(out, "RUSTC=%s/rustc" % self.bin)

    def test_several_problems_at_once(self):
        self.config["DEBUG_FS"] = None
        self.write_config()
        os.remove(os.path.join(self.kdir, "rust/libmacros.so"))
        tool(self.bin, "rustc", 'echo "rustc 9.98.0"\n')
        self.assertProblems(["kernel-options", "no-rust-metadata", "rustc-version"])


def cached_612_tree():
    trees = sorted(glob.glob(os.path.join(CACHE, "kernel-6.12-release-*")))
    trees = [t for t in trees if os.path.exists(os.path.join(t, ".spantrack-built"))]
    return trees[-1] if trees else None


@unittest.skipUnless(cached_612_tree(), "no cached 6.12 release kernel (scripts/build-kernel.sh)")
class CheckHostOnTheCachedKernel(unittest.TestCase):
    """A tree of links to the real build tree's files: complete, then with parts taken away."""

    def setUp(self):
        self.real = cached_612_tree()
        self.tmp = tempfile.mkdtemp(prefix="check-host-real-")
        self.addCleanup(shutil.rmtree, self.tmp)
        self.kdir = os.path.join(self.tmp, "build")
        files = ["Makefile", ".config", "include/config/kernel.release",
                 "include/generated/rustc_cfg", "scripts/target.json"]
        files += [os.path.relpath(p, self.real) for p in glob.glob(os.path.join(self.real, "rust", "lib*"))]
        for f in files:
            os.makedirs(os.path.dirname(os.path.join(self.kdir, f)), exist_ok=True)
            os.symlink(os.path.join(self.real, f), os.path.join(self.kdir, f))
        with open(os.path.join(self.real, ".config")) as f:
            self.config = f.read()
        m = re.search(r'^CONFIG_RUSTC_VERSION_TEXT="(.*)"$', self.config, re.M)
        self.rustc_text = m.group(1)

    def run_check(self):
        env = {k: v for k, v in os.environ.items() if k not in ("RUSTC", "KDIR")}
        p = subprocess.run(["bash", CHECK, "--kdir", self.kdir, "--make-flags"],
                           capture_output=True, text=True, env=env, timeout=60)
        return p.returncode, p.stdout.strip(), p.stderr, set(re.findall(r"\[([a-z-]+)\]", p.stderr))

    def host_has_the_kernels_rustc(self):
        for c in ["/usr/bin/rustc"] + glob.glob(os.path.expanduser("~/.rustup/toolchains/*/bin/rustc")):
            try:
                if subprocess.run([c, "--version"], capture_output=True, text=True).stdout.strip() == self.rustc_text:
                    return True
            except OSError:
                pass
        return False

    def test_complete(self):
        if not self.host_has_the_kernels_rustc():
            self.skipTest("the rustc the cached kernel was built with is gone")
        rc, out, err, keys = self.run_check()
        self.assertEqual((rc, keys), (0, set()), err)
        self.assertRegex(out, r"^LLVM=\S+ RUSTC=/\S+/rustc$")

    def test_without_libkernel(self):
        os.remove(os.path.join(self.kdir, "rust/libkernel.rmeta"))
        rc, out, err, keys = self.run_check()
        self.assertEqual(rc, 1, err)
        self.assertIn("no-rust-metadata", keys)
        self.assertIn("rust/libkernel.rmeta absent", err)

    def test_without_a_crate_the_kernel_crate_needs(self):
        if not self.host_has_the_kernels_rustc():
            self.skipTest("the rustc the cached kernel was built with is gone")
        os.remove(os.path.join(self.kdir, "rust/libuapi.rmeta"))
        rc, out, err, keys = self.run_check()
        self.assertEqual((rc, keys), (1, {"rust-metadata-unusable"}), err)
        self.assertIn("can't find crate for `uapi`", err)

    def test_without_config_rust(self):
        os.remove(os.path.join(self.kdir, ".config"))
        with open(os.path.join(self.kdir, ".config"), "w") as f:
            f.write(self.config.replace("CONFIG_RUST=y\n", "# CONFIG_RUST is not set\n"))
        rc, out, err, keys = self.run_check()
        self.assertEqual((rc, keys), (1, {"no-config-rust"}), err)


if __name__ == "__main__":
    unittest.main()
