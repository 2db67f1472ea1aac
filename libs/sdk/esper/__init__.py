"""The researcher SDK: wrap a model, Kasmina seed slots, the Tolaria trainer."""
