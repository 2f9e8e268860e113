"""pynetdicom, a second DIMSE implementation, against the DICOM node: C-ECHO, then the study's
files by C-STORE in one association as calling AE PYNETDICOM; meanwhile a pynetdicom storage SCP
(AE PYSCP) receives the results the node sends back. Prints one JSON object.

    dimse_peer.py NODE_PORT STUDY_DIR SCP_PORT
"""
import json
import os
import sys
import time

from pydicom import dcmread
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import Verification


def main():
    node_port, study_dir, scp_port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    received = []

    def on_store(event):
        ds = event.dataset
        received.append(str(ds.get("Modality", "")))
        return 0x0000

    scp = AE(ae_title="PYSCP")
    scp.supported_contexts = StoragePresentationContexts
    server = scp.start_server(("127.0.0.1", scp_port), block=False,
                              evt_handlers=[(evt.EVT_C_STORE, on_store)])

    scu = AE(ae_title="PYNETDICOM")
    # A node starved of CPU (the suite runs the abuse tests beside this one on two cores) may
    # answer a C-STORE after pynetdicom's default 30 s: wait as long as the node's own timeout.
    for ae in (scp, scu):
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    scu.add_requested_context(Verification)
    files = [dcmread(os.path.join(study_dir, n)) for n in sorted(os.listdir(study_dir))]
    for ds in files[:1]:
        scu.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = scu.associate("127.0.0.1", node_port, ae_title="OSTEO")
    if not assoc.is_established:
        print(json.dumps({"error": "association not established"}))
        sys.exit(1)
    echo = assoc.send_c_echo()
    statuses = [assoc.send_c_store(ds).Status for ds in files]
    assoc.release()

    deadline = time.time() + 60
    while len(received) < 2 and time.time() < deadline:
        time.sleep(0.1)
    server.shutdown()
    print(json.dumps({
        "echo": echo.Status,
        "stored": len(files),
        "statuses": sorted(set(statuses)),
        "received": sorted(received),
    }))


if __name__ == "__main__":
    main()
