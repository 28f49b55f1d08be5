//! `wasi-run` runs WASI command modules: output forwarded, exit code kept, args passed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

const MODULE: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (import "env" "not_there" (func $missing))
  (memory (export "memory") 1)
  (data (i32.const 100) "hello\n")
  (func (export "_start")
    ;; iovec at 0: ptr 100, len 6
    (i32.store (i32.const 0) (i32.const 100))
    (i32.store (i32.const 4) (i32.const 6))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    ;; exit with argc
    (drop (call $args_sizes (i32.const 16) (i32.const 20)))
    (call $exit (i32.load (i32.const 16)))))
"#;

#[test]
fn runs_a_command_module() {
    let dir = std::env::temp_dir().join(format!("wasi-run-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cmd.wat");
    std::fs::write(&path, MODULE).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wasi-run")).arg(&path).args(["a", "b"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    // argc = module path + 2 arguments.
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_dir_all(&dir).ok();
}
