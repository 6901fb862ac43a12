"""Loads a file with gcloud's own parser and prints what gcloud would send, as JSON.

Run with the Python bundled with the Google Cloud SDK (conftest.py finds it):

    python gcloud_loaders.py cloudbuild cloudbuild.yaml
    python gcloud_loaders.py node-system-config deploy/gke/node-system-config.yaml

`cloudbuild` is what `gcloud builds submit --config` runs before it talks to the service
(unknown fields, bad enum values and malformed substitution keys are refused);
`node-system-config` is what `gcloud container node-pools create --system-config-from-file`
runs (unknown fields and wrong types are refused). Exit code 1 and the error on stderr when
gcloud refuses the file.
"""

import os
import sys


def main() -> int:
    sdk_lib = os.environ["SAPPHIRE_GCLOUD_SDK_LIB"]
    sys.path[0:0] = [sdk_lib, os.path.join(sdk_lib, "third_party")]
    from apitools.base.py import encoding  # noqa: E402  (after the SDK is on the path)

    what, path = sys.argv[1], sys.argv[2]
    try:
        if what == "cloudbuild":
            from googlecloudsdk.api_lib.cloudbuild import cloudbuild_util, config

            message = config.LoadCloudbuildConfigFromPath(path, cloudbuild_util.GetMessagesModule())
        elif what == "node-system-config":
            from googlecloudsdk.api_lib.container import util
            from googlecloudsdk.api_lib.util import apis

            messages = apis.GetMessagesModule("container", "v1")
            message = messages.NodeConfig()
            with open(path) as f:
                util.LoadSystemConfigFromYAML(message, f.read(), None, messages)
        else:
            print(f"unknown loader {what}", file=sys.stderr)
            return 2
    except Exception as e:  # gcloud raises several unrelated exception types
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(encoding.MessageToJson(message))
    return 0


if __name__ == "__main__":
    sys.exit(main())
