"""Real hugepages on this host (serialized with the other helpers' suites by a lock file), and the short-read
check on a synthetic pool that gives fewer pages than asked."""
import fcntl
import mmap
import os

import pytest

from dpdkeni import hugepages as hp
from dpdkeni.errors import Error, InputError
from dpdkeni.sysfs import Sysfs

M2 = 2 << 20
LOCK = "/run/dpdkeni-test-hugepages.lock"
needs_hugetlb = pytest.mark.skipif(not os.path.exists("/sys/kernel/mm/hugepages/hugepages-2048kB"),
                                   reason="no 2M hugepages on this kernel")


@pytest.fixture
def hugepage_lock(state_dir):
    """Hold the shared hugepage lock; check the pool is back as found afterwards."""
    with open(LOCK, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        before = [p.total for p in hp.status() if p.node is None]
        yield
        assert [p.total for p in hp.status() if p.node is None] == before


@pytest.mark.parametrize("text,value", [("256M", 256 << 20), ("1G", 1 << 30), ("2048k", 2 << 20),
                                        ("2MiB", 2 << 20), ("4096", 4096)])
def test_parse_size(text, value):
    assert hp.parse_size(text) == value


def test_bad_size_is_input_error():
    with pytest.raises(InputError, match="malformed size"):
        hp.parse_size("lots")


def test_pages_for_rounds_up():
    assert hp.pages_for("256M", M2) == 128 and hp.pages_for("3M", M2) == 2 and hp.pages_for("1G", 1 << 30) == 1


@needs_hugetlb
def test_reserve_read_back_mount_cap_and_release(hugepage_lock, tmp_path):
    before = hp._pool(Sysfs(), M2, None).total
    total = hp.add_pages(4, M2)
    released = False
    try:
        assert total == before + 4 and hp._pool(Sysfs(), M2, None).total == before + 4
        mnt = str(tmp_path / "hp")
        hp.mount_hugetlbfs(mnt, 4 * M2, M2)
        try:
            assert {"path": mnt, "options": f"rw,relatime,pagesize=2M,size={4 * M2}"} in hp.mounts()
            fd = os.open(f"{mnt}/map", os.O_CREAT | os.O_RDWR)
            try:
                os.ftruncate(fd, 6 * M2)
                with pytest.raises(OSError) as err:  # past the size= cap: the kernel refuses the mapping
                    mmap.mmap(fd, 6 * M2)
                assert err.value.errno == 12
                os.ftruncate(fd, 4 * M2)
                m = mmap.mmap(fd, 4 * M2)
                m[0:5] = b"hello"
                pool = hp._pool(Sysfs(), M2, None)
                assert pool.total - pool.free == 1  # one page touched: the cap is usable up to it
                m.close()
            finally:
                os.close(fd)
        finally:
            hp.umount_hugetlbfs(mnt)
        assert mnt not in [m["path"] for m in hp.mounts()]
        released = hp.remove_pages(4, M2) == before
        assert released
    finally:
        if not released:
            hp.set_pages(before, M2)


@needs_hugetlb
def test_mount_in_a_container_mount_namespace(hugepage_lock, container_factory):
    c = container_factory()
    c.run("mount", "-t", "tmpfs", "tmpfs", "/mnt")
    hp.mount_hugetlbfs("/mnt/hugepages", 8 * M2, M2, pid=c.pid)
    inside = [m for m in hp.mounts(c.pid) if m["path"] == "/mnt/hugepages"]
    assert inside and f"size={8 * M2}" in inside[0]["options"]
    assert "/mnt/hugepages" not in [m["path"] for m in hp.mounts()]  # only the container sees it
    hp.umount_hugetlbfs("/mnt/hugepages", pid=c.pid)
    assert not [m for m in hp.mounts(c.pid) if m["path"] == "/mnt/hugepages"]


class StingySysfs(Sysfs):
    """A pool that holds at most ``cap`` pages, like a kernel with fragmented memory."""

    cap = 300

    def write(self, rel, value):
        if rel.endswith("nr_hugepages") and value.isdigit():
            value = str(min(int(value), self.cap))
        super().write(rel, value)


def test_short_reservation_says_asked_and_got_and_is_undone(sysfs_tree, state_dir):
    pool = "sys/kernel/mm/hugepages/hugepages-2048kB"
    sysfs_tree.write(f"{pool}/nr_hugepages", "10")
    fs = StingySysfs(sysfs_tree.root)
    with pytest.raises(Error, match="asked 512, got 300"):
        hp.set_pages(512, M2, fs=fs)
    assert fs.read_int(f"{pool}/nr_hugepages") == 10
    with pytest.raises(InputError, match="no 1G hugepage pool"):
        hp.set_pages(1, 1 << 30, fs=fs)


def test_per_node_pool_path(sysfs_tree, state_dir):
    sysfs_tree.write("sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", "0")
    sysfs_tree.write("sys/devices/system/node/node1/hugepages/hugepages-2048kB/nr_hugepages", "0")
    fs = Sysfs(sysfs_tree.root)
    assert hp.set_pages(16, M2, node=1, fs=fs) == 16
    pools = {(p.node, p.page_bytes): p.total for p in hp.status(fs)}
    assert pools == {(None, M2): 0, (1, M2): 16}


def test_cli_show_and_reserve_bad_input(cli):
    out = cli("hugepages", "show", "--json")
    assert out.returncode == 0 and {"pagesize", "total", "free", "node"} <= set(__import__("json").loads(
        out.stdout)[0])
    out = cli("hugepages", "reserve", "lots")
    assert out.returncode == 2 and "malformed size" in out.stderr


@needs_hugetlb
def test_cli_reserve_sets_the_pool_and_reads_it_back(hugepage_lock, cli):
    before = hp._pool(Sysfs(), M2, None).total
    out = cli("hugepages", "reserve", f"{(before + 2) * 2}M")
    try:
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"{before + 2} pages of 2M reserved"
        assert hp._pool(Sysfs(), M2, None).total == before + 2
    finally:
        assert cli("hugepages", "reserve", "--pages", str(before)).returncode == 0
    assert cli("hugepages", "reserve").returncode == 2


@needs_hugetlb
def test_cli_clear_empties_every_system_wide_pool(hugepage_lock, cli):
    """``dpdkeni hugepages clear`` after a ``reserve`` in each page size the kernel offers (1G when memory allows):
    every system-wide pool reads 0 after it. The pools are put back as found whatever happens."""
    pools = {p.page_bytes: f"/sys/kernel/mm/hugepages/hugepages-{p.page_bytes >> 10}kB/nr_hugepages"
             for p in hp.status() if p.node is None}
    before = {size: int(open(path).read()) for size, path in pools.items()}
    try:
        r = cli("hugepages", "reserve", "--pages", str(before[M2] + 4), "--pagesize", "2M")
        assert r.returncode == 0, r.stderr
        assert int(open(pools[M2]).read()) == before[M2] + 4
        if 1 << 30 in pools:  # one 1G page if the kernel finds the memory; cleared either way
            cli("hugepages", "reserve", "--pages", str(before[1 << 30] + 1), "--pagesize", "1G")
        r = cli("hugepages", "clear")
        assert (r.returncode, r.stdout) == (0, "hugepages cleared\n"), r.stderr
        assert {size: int(open(path).read()) for size, path in pools.items()} == {size: 0 for size in pools}
    finally:
        for size, count in before.items():
            with open(pools[size], "w") as f:
                f.write(str(count))
