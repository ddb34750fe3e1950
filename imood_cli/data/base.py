"""What every benchmark hands to the engine: the types live in `imood_cli.core.dataset` (public through
`imood_cli.plugin_api`, for dataset plugins); imood's own data code imports them from here."""

from imood_cli.core.dataset import (
    Benchmark as Benchmark,
)
from imood_cli.core.dataset import (
    Dataset as Dataset,
)
from imood_cli.core.dataset import (
    FileStatus as FileStatus,
)
from imood_cli.core.dataset import (
    ImageSet as ImageSet,
)
from imood_cli.core.dataset import (
    group_missing as group_missing,
)
from imood_cli.core.dataset import (
    missing_phrase as missing_phrase,
)
from imood_cli.data.pipeline.augment_spec import AugmentSpec as AugmentSpec
