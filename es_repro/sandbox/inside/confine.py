"""File-system confinement of the ``unshare`` level, applied by the worker to its own new mount namespace (private
propagation: nothing here reaches the host's mount table) before it imports or runs anything else:

1. every mount, the host's whole tree, becomes read-only (one recursive mount_setattr, Linux >= 5.12);
2. a small read-only tmpfs covers each world-writable place (/tmp, /var/tmp, /dev/shm, ...), so nothing a job
   does there can reach the host, and no job can leave a file there for the next one;
3. directories the worker needs that the tmpfs would hide (a Python or checkout under /tmp) are bound back,
   read-only, from descriptors opened before step 2;
4. the worker's host directory is bound, writable, at ``work`` (the only writable place; each job gets its own
   subdirectory there, removed after the job).

Read-only is a property of the mount, so it holds for every uid, root of a user namespace included; a job that
makes a user namespace of its own finds these mounts locked read-only (the kernel forbids clearing the flag).
"""
from __future__ import annotations

import ctypes
import os

SYS_MOUNT_SETATTR = 442  # the same on every architecture (one shared table for syscalls added since Linux 5.1)
AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = -100, 0x8000, 0x1
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC = 0x2, 0x4, 0x8, 0x1000, 0x4000
_libc = ctypes.CDLL(None, use_errno=True)


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64),
                ("userns_fd", ctypes.c_uint64)]


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _readonly(path: str, readonly: bool = True, recursive: bool = True) -> None:
    attr = _MountAttr(attr_set=MOUNT_ATTR_RDONLY if readonly else 0, attr_clr=0 if readonly else MOUNT_ATTR_RDONLY)
    flags = AT_RECURSIVE if recursive else 0
    result = _libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(AT_FDCWD), path.encode(),
                           ctypes.c_uint(flags), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))
    _check(result, f"mount_setattr({path}, {'ro' if readonly else 'rw'}) (needs Linux >= 5.12)")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    result = _libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None,
                         ctypes.c_ulong(flags), data.encode() if data else None)
    _check(result, f"mount {source} on {target}")


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def apply(tmpfs: list[str], keep: list[str], host_work: str, work: str) -> None:
    """Confine this mount namespace (see the module docstring). Raises OSError if any step fails: the worker
    then does not start, and the pool does not use the level."""
    places = sorted({p for p in tmpfs if os.path.isdir(p) and not os.path.islink(p)})
    places = [p for p in places if not any(q != p and _under(p, q) for q in places)]  # one tmpfs hides all below
    keep = sorted(set(keep))
    keep = [k for k in keep if not any(o != k and _under(k, o) for o in keep)]  # a bind brings what is below it
    hidden = [k for k in keep if any(_under(k, p) for p in places)]
    fds = {path: os.open(path, os.O_PATH | os.O_DIRECTORY) for path in hidden + [host_work]}
    _readonly("/")
    for place in places:
        _mount("tmpfs", place, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755,size=64k")
    for path in hidden + [work]:
        os.makedirs(path, 0o755, exist_ok=True)  # mount points on the fresh tmpfs
        source = host_work if path == work else path
        _mount(f"/proc/self/fd/{fds[source]}", path, None, MS_BIND | MS_REC)  # read-only: copied from the source
    for place in places:
        _readonly(place, recursive=False)
    _readonly(work, readonly=False, recursive=False)
    for fd in fds.values():
        os.close(fd)
    os.chdir(work)
