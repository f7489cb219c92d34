# rules of this family are added by their issue
