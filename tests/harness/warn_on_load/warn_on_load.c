// SPDX-License-Identifier: GPL-2.0
/* A deliberately broken module: WARNs when loaded. The harness self-test loads it and
 * expects scripts/vm-run.sh to fail although the guest command itself succeeds. */
#include <linux/module.h>
#include <linux/bug.h>

static int __init warn_on_load_init(void)
{
	WARN(1, "warn_on_load: deliberate warning for the harness self-test\n");
	return 0;
}

static void __exit warn_on_load_exit(void)
{
}

module_init(warn_on_load_init);
module_exit(warn_on_load_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("spantrack harness self-test: WARN on load");
