"""The datasets a study can name (no imports: the Snakefile reads them on every start)."""

# Read from disk through torchvision (clipdrift.data.real); every other name is a task of the
# synthetic world (clipdrift.world.tasks).
REAL_DATASETS = ("eurosat", "pets", "cifar100")
