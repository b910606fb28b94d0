from dpdkeni import doctor
from dpdkeni.sysfs import Sysfs


def test_doctor_on_synthetic_host(sysfs_tree):
    t = sysfs_tree
    t.add_driver("vfio-pci")
    t.write("dev/vfio/vfio", "")
    t.write("sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", "64")
    t.write("sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages", "60")
    t.write("proc/self/mounts", "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\nnone /dev/hugepages hugetlbfs rw 0 0")
    t.write("proc/self/status", "Name:\tx\nCapEff:\t000001ffffffffff")
    checks = {c.name: c for c in doctor.run_checks(Sysfs(t.root))}
    assert checks["vfio"].status == "ok"
    assert checks["iommu"].status == "fail"  # no groups, no noiommu parameter
    assert checks["hugepages 2048kB"].detail == "64 reserved, 60 free"
    assert checks["hugetlbfs"].status == "ok"
    assert checks["udevd"].status == "warn"
    assert checks["cgroup"].detail.startswith("layout v2")
    assert checks["capabilities"].status == "ok"


def test_doctor_noiommu_and_no_caps(sysfs_tree):
    t = sysfs_tree
    t.write("sys/module/vfio/parameters/enable_unsafe_noiommu_mode", "Y")
    t.write("proc/self/status", "CapEff:\t0000000000000000")
    checks = {c.name: c for c in doctor.run_checks(Sysfs(t.root))}
    assert checks["iommu"].status == "warn" and "unsafe" in checks["iommu"].detail
    assert checks["capabilities"].status == "fail" and "CAP_NET_ADMIN" in checks["capabilities"].detail
    assert checks["vfio"].status == "fail"
