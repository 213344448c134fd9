# The data partition (spool, index, results, installed models, the site's
# configuration, RAUC's state) survives root file system updates.
FILESEXTRAPATHS:prepend:tegra234 := "${THISDIR}/files:"
SRC_URI:append:tegra234 = " file://fstab"
